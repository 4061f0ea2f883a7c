//! Hand-written protobuf encoding of the hot messages: the `DomainEvent` envelope and market-data
//! payloads. Byte-compatible with prost's generated code for the same schema (tests check both
//! directions); it exists because the generated code needs a `HashMap` and owned strings per
//! envelope, which dominated the pipeline's cost. Map entries are written in sorted key order,
//! so an event always encodes to the same bytes.

use crate::event::DecodeError;
use crate::fixed::{Fixed, SCALE};
use crate::time::{Timestamp, NANOS_PER_SEC};

// ---- writing ------------------------------------------------------------------------------

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, ((field << 3) | wire_type) as u64);
}

fn key_len(field: u32) -> usize {
    varint_len((field << 3) as u64)
}

/// A length-delimited field (skipped when empty, as proto3 does).
pub fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if b.is_empty() {
        return;
    }
    key(out, field, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn bytes_len(field: u32, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        key_len(field) + varint_len(n as u64) + n
    }
}

/// A varint field (skipped when zero).
pub fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(out, field, 0);
        put_varint(out, v);
    }
}

fn uint_len(field: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(field) + varint_len(v)
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn decimal_body_len(x: Fixed) -> usize {
    uint_len(1, zigzag(x.units())) + uint_len(2, SCALE as u64)
}

/// A `Decimal` sub-message (always present, so absence stays distinguishable from zero).
pub fn put_decimal(out: &mut Vec<u8>, field: u32, x: Fixed) {
    key(out, field, 2);
    put_varint(out, decimal_body_len(x) as u64);
    put_uint(out, 1, zigzag(x.units()));
    put_uint(out, 2, SCALE as u64);
}

fn decimal_len(field: u32, x: Fixed) -> usize {
    let n = decimal_body_len(x);
    key_len(field) + varint_len(n as u64) + n
}

fn timestamp_parts(t: Timestamp) -> (u64, u64) {
    (
        t.nanos().div_euclid(NANOS_PER_SEC) as u64,
        t.nanos().rem_euclid(NANOS_PER_SEC) as u64,
    )
}

fn timestamp_body_len(t: Timestamp) -> usize {
    let (s, n) = timestamp_parts(t);
    uint_len(1, s) + uint_len(2, n)
}

/// A `google.protobuf.Timestamp` sub-message.
pub fn put_timestamp(out: &mut Vec<u8>, field: u32, t: Timestamp) {
    let (s, n) = timestamp_parts(t);
    key(out, field, 2);
    put_varint(out, timestamp_body_len(t) as u64);
    put_uint(out, 1, s);
    put_uint(out, 2, n);
}

fn timestamp_len(field: u32, t: Timestamp) -> usize {
    let n = timestamp_body_len(t);
    key_len(field) + varint_len(n as u64) + n
}

/// The `DomainEvent` envelope. `metadata` must be sorted by key.
pub fn encode_envelope(
    out: &mut Vec<u8>,
    id: &str,
    aggregate_id: &str,
    event_type: u64,
    ts: Timestamp,
    payload: &[u8],
    metadata: &[(&str, &str)],
) {
    out.reserve(64 + id.len() + aggregate_id.len() + payload.len() + metadata.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>());
    put_bytes(out, 1, id.as_bytes());
    put_bytes(out, 2, aggregate_id.as_bytes());
    put_uint(out, 3, event_type);
    put_timestamp(out, 4, ts);
    put_bytes(out, 5, payload);
    for (k, v) in metadata {
        key(out, 6, 2);
        put_varint(out, (bytes_len(1, k.len()) + bytes_len(2, v.len())) as u64);
        put_bytes(out, 1, k.as_bytes());
        put_bytes(out, 2, v.as_bytes());
    }
}

/// `MarketData { trade }` with the trade's fields.
#[allow(clippy::too_many_arguments)]
pub fn encode_trade(
    out: &mut Vec<u8>,
    symbol: &str,
    exchange: &str,
    trade_id: &str,
    price: Fixed,
    quantity: Fixed,
    side: u64,
    ts: Timestamp,
) {
    let body = bytes_len(1, symbol.len())
        + bytes_len(2, exchange.len())
        + bytes_len(3, trade_id.len())
        + decimal_len(4, price)
        + decimal_len(5, quantity)
        + uint_len(6, side)
        + timestamp_len(7, ts);
    key(out, 1, 2);
    put_varint(out, body as u64);
    put_bytes(out, 1, symbol.as_bytes());
    put_bytes(out, 2, exchange.as_bytes());
    put_bytes(out, 3, trade_id.as_bytes());
    put_decimal(out, 4, price);
    put_decimal(out, 5, quantity);
    put_uint(out, 6, side);
    put_timestamp(out, 7, ts);
}

// ---- reading ------------------------------------------------------------------------------

/// A protobuf reader over borrowed bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn invalid(what: &str) -> DecodeError {
    DecodeError::Envelope(what.to_string())
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Inlined for the one-byte case (every field key, most lengths); longer ones take the
    /// loop out of line.
    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(b as u64)
            }
            _ => self.varint_long(),
        }
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or_else(|| invalid("truncated varint"))?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(invalid("varint longer than 10 bytes"))
    }

    /// The next field's number and wire type.
    pub fn key(&mut self) -> Result<(u32, u32), DecodeError> {
        let k = self.varint()?;
        let field = (k >> 3) as u32;
        if field == 0 {
            return Err(invalid("field number 0"));
        }
        Ok((field, (k & 7) as u32))
    }

    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.varint()? as usize;
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| invalid("truncated length-delimited field"))?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    #[inline]
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let b = self.bytes()?;
        // Ids, symbols and names are ASCII: one vectorised test instead of the UTF-8 state
        // machine, which cost more than the rest of the string's decoding.
        if b.is_ascii() {
            // SAFETY: ASCII bytes are valid UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(b) });
        }
        std::str::from_utf8(b).map_err(|_| invalid("string field is not UTF-8"))
    }

    /// Skips a field of an unknown number.
    pub fn skip(&mut self, wire_type: u32) -> Result<(), DecodeError> {
        match wire_type {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            w => Err(invalid(&format!("unsupported wire type {w}"))),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), DecodeError> {
        if self.pos + n > self.buf.len() {
            return Err(invalid("truncated fixed-width field"));
        }
        self.pos += n;
        Ok(())
    }

    fn expect(&self, wire_type: u32, want: u32, field: &str) -> Result<(), DecodeError> {
        if wire_type == want {
            Ok(())
        } else {
            Err(invalid(&format!("field `{field}` has wire type {wire_type}, expected {want}")))
        }
    }
}

/// The envelope's fields, borrowed from the record.
#[derive(Default, Debug)]
pub struct Envelope<'a> {
    pub event_id: &'a str,
    pub aggregate_id: &'a str,
    pub event_type: u64,
    pub timestamp: Option<(i64, i64)>,
    pub payload: &'a [u8],
    /// In wire order; a later duplicate key wins, as in protobuf maps.
    pub metadata: Vec<(&'a str, &'a str)>,
    /// The first field number this schema does not define, if any.
    pub unknown_field: Option<u32>,
}

pub fn decode_envelope(buf: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let mut env = Envelope::default();
    while !r.done() {
        let (field, wt) = r.key()?;
        match field {
            1 => {
                r.expect(wt, 2, "event_id")?;
                env.event_id = r.str()?;
            }
            2 => {
                r.expect(wt, 2, "aggregate_id")?;
                env.aggregate_id = r.str()?;
            }
            3 => {
                r.expect(wt, 0, "type")?;
                env.event_type = r.varint()?;
            }
            4 => {
                r.expect(wt, 2, "timestamp")?;
                let mut t = Reader::new(r.bytes()?);
                let (mut secs, mut nanos) = (0i64, 0i64);
                while !t.done() {
                    let (f, w) = t.key()?;
                    match (f, w) {
                        (1, 0) => secs = t.varint()? as i64,
                        (2, 0) => nanos = t.varint()? as i32 as i64,
                        (_, w) => t.skip(w)?,
                    }
                }
                env.timestamp = Some((secs, nanos));
            }
            5 => {
                r.expect(wt, 2, "payload")?;
                env.payload = r.bytes()?;
            }
            6 => {
                r.expect(wt, 2, "metadata")?;
                let mut e = Reader::new(r.bytes()?);
                let (mut k, mut v) = ("", "");
                while !e.done() {
                    let (f, w) = e.key()?;
                    match (f, w) {
                        (1, 2) => k = e.str()?,
                        (2, 2) => v = e.str()?,
                        (_, w) => e.skip(w)?,
                    }
                }
                env.metadata.push((k, v));
            }
            n => {
                env.unknown_field.get_or_insert(n);
                r.skip(wt)?;
            }
        }
    }
    Ok(env)
}

/// A trade's fields, borrowed from a `MarketData { trade }` payload.
pub struct TradeRef<'a> {
    pub symbol: &'a str,
    pub exchange: &'a str,
    pub trade_id: &'a str,
    pub price: Option<(i64, u32)>,
    pub quantity: Option<(i64, u32)>,
    pub side: u64,
    pub ts: Option<(i64, i64)>,
}

fn decimal_parts(buf: &[u8]) -> Result<(i64, u32), DecodeError> {
    let mut r = Reader::new(buf);
    let (mut units, mut scale) = (0i64, 0u32);
    while !r.done() {
        match r.key()? {
            (1, 0) => {
                let z = r.varint()?;
                units = ((z >> 1) as i64) ^ -((z & 1) as i64);
            }
            (2, 0) => scale = r.varint()? as u32,
            (_, w) => r.skip(w)?,
        }
    }
    Ok((units, scale))
}

/// The fast path for the commonest payload. `None` when the payload is anything but a
/// well-formed trade: the caller then decodes with the generated code, which names the problem.
pub fn decode_trade(buf: &[u8]) -> Option<TradeRef<'_>> {
    let mut outer = Reader::new(buf);
    let (field, wt) = outer.key().ok()?;
    if (field, wt) != (1, 2) {
        return None;
    }
    let body = outer.bytes().ok()?;
    if !outer.done() {
        return None;
    }
    let mut r = Reader::new(body);
    let mut t = TradeRef {
        symbol: "",
        exchange: "",
        trade_id: "",
        price: None,
        quantity: None,
        side: 0,
        ts: None,
    };
    while !r.done() {
        match r.key().ok()? {
            (1, 2) => t.symbol = r.str().ok()?,
            (2, 2) => t.exchange = r.str().ok()?,
            (3, 2) => t.trade_id = r.str().ok()?,
            (4, 2) => t.price = Some(decimal_parts(r.bytes().ok()?).ok()?),
            (5, 2) => t.quantity = Some(decimal_parts(r.bytes().ok()?).ok()?),
            (6, 0) => t.side = r.varint().ok()?,
            (7, 2) => {
                let mut tr = Reader::new(r.bytes().ok()?);
                let (mut secs, mut nanos) = (0i64, 0i64);
                while !tr.done() {
                    match tr.key().ok()? {
                        (1, 0) => secs = tr.varint().ok()? as i64,
                        (2, 0) => nanos = tr.varint().ok()? as i32 as i64,
                        (_, w) => tr.skip(w).ok()?,
                    }
                }
                t.ts = Some((secs, nanos));
            }
            _ => return None,
        }
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use horizon_proto::v1 as pb;
    use prost::Message;

    #[test]
    fn a_string_field_is_utf8_ascii_or_not_and_anything_else_is_refused() {
        let field = |bytes: &[u8]| {
            let mut b = Vec::new();
            put_varint(&mut b, bytes.len() as u64);
            b.extend_from_slice(bytes);
            b
        };
        for text in ["BTCUSDT", "", "café ₿", "数据"] {
            assert_eq!(Reader::new(&field(text.as_bytes())).str().unwrap(), text);
        }
        for bad in [&b"\xff"[..], b"caf\xc3", b"\xc3\x28", b"ok\x80ok"] {
            assert!(Reader::new(&field(bad)).str().is_err(), "{bad:?}");
        }
        // A truncated length-delimited field is refused before its bytes are looked at.
        assert!(Reader::new(&[5, b'a', b'b']).str().is_err());
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            assert_eq!(Reader::new(&b).varint().unwrap(), v);
        }
    }

    #[test]
    fn envelope_bytes_decode_with_prost_and_prost_bytes_decode_here() {
        let mut out = Vec::new();
        let ts = Timestamp(-1_500_000_001);
        encode_envelope(&mut out, "id-1", "BTC", 3, ts, b"\x01\x02", &[("a", "1"), ("b", "")]);
        let env = pb::DomainEvent::decode(out.as_slice()).unwrap();
        assert_eq!((env.event_id.as_str(), env.aggregate_id.as_str(), env.r#type), ("id-1", "BTC", 3));
        assert_eq!(env.timestamp.unwrap(), ts.to_proto());
        assert_eq!(&env.payload[..], b"\x01\x02");
        assert_eq!(env.metadata.get("a").map(String::as_str), Some("1"));
        assert_eq!(env.metadata.get("b").map(String::as_str), Some(""));

        let bytes = env.encode_to_vec();
        let back = decode_envelope(&bytes).unwrap();
        assert_eq!((back.event_id, back.aggregate_id, back.event_type), ("id-1", "BTC", 3));
        assert_eq!(back.timestamp, Some((ts.to_proto().seconds, ts.to_proto().nanos as i64)));
    }

    #[test]
    fn trade_bytes_equal_prosts() {
        let price: Fixed = "60000.5".parse().unwrap();
        let qty: Fixed = "-0.01".parse().unwrap();
        let ts = Timestamp(1_700_000_000_123_456_789);
        let mut ours = Vec::new();
        encode_trade(&mut ours, "BTC", "SIM", "42", price, qty, 2, ts);
        let theirs = pb::MarketData {
            data: Some(pb::market_data::Data::Trade(pb::Trade {
                symbol: "BTC".into(),
                exchange: "SIM".into(),
                trade_id: "42".into(),
                price: Some(pb::Decimal {
                    units: price.units(),
                    scale: SCALE,
                }),
                quantity: Some(pb::Decimal {
                    units: qty.units(),
                    scale: SCALE,
                }),
                aggressor_side: 2,
                ts_exchange: Some(ts.to_proto()),
            })),
        }
        .encode_to_vec();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn truncation_and_bad_wire_types_are_errors() {
        let mut out = Vec::new();
        encode_envelope(&mut out, "id", "agg", 0, Timestamp(0), b"xyz", &[]);
        for cut in 1..out.len() {
            let _ = decode_envelope(&out[..cut]); // must not panic
        }
        assert!(decode_envelope(&out[..out.len() - 1]).is_err());
        assert!(decode_envelope(&[0x08, 0x01]).is_err(), "event_id as a varint");
        let mut newer = out.clone();
        put_uint(&mut newer, 9, 1);
        assert_eq!(decode_envelope(&newer).unwrap().unknown_field, Some(9));
    }
}
