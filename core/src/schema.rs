//! Which fields each wire message has, read from the compiled schema
//! (`horizon_proto::DESCRIPTORS`), to find fields a payload carries that this build does not
//! know. prost skips unknown fields silently; the codec must refuse them instead (a newer
//! producer's data would otherwise be dropped without a word), and must not refuse what is
//! legal protobuf for fields it knows: a default value written explicitly, a repeated field
//! written unpacked, a longer varint. (Comparing the payload's length with its re-encoding, as
//! the codec did before, refused all three.)

use prost::Message;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Per message (full name, no leading dot): each field number and, for message-typed fields,
/// the field's type.
type Index = BTreeMap<String, BTreeMap<u32, Option<String>>>;

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let set = FileDescriptorSet::decode(horizon_proto::DESCRIPTORS).expect("horizon-proto ships valid descriptors");
        let mut index = Index::new();
        for file in &set.file {
            for m in &file.message_type {
                add(&mut index, file.package(), m);
            }
        }
        index
    })
}

fn add(index: &mut Index, scope: &str, m: &DescriptorProto) {
    let name = format!("{scope}.{}", m.name());
    let fields = m
        .field
        .iter()
        .map(|f| {
            let nested = (f.r#type() == Type::Message).then(|| f.type_name().trim_start_matches('.').to_string());
            (f.number() as u32, nested)
        })
        .collect();
    for n in &m.nested_type {
        add(index, &name, n);
    }
    index.insert(name, fields);
}

/// The first field in `bytes` (a `message` as encoded) that the schema does not give that
/// message, nested messages included, as "field N of horizon.v1.Name"; `None` when every field
/// is known. A message type the schema does not describe is not looked into.
pub fn unknown_field(message: &str, bytes: &[u8]) -> Option<String> {
    scan(index(), message, bytes).err()
}

fn scan(index: &Index, message: &str, bytes: &[u8]) -> Result<(), String> {
    let Some(fields) = index.get(message) else {
        return Ok(());
    };
    let mut r = crate::wire::Reader::new(bytes);
    while !r.done() {
        let (number, wire_type) = r.key().map_err(|e| format!("{message}: {e}"))?;
        let Some(nested) = fields.get(&number) else {
            return Err(format!("field {number} of {message}"));
        };
        match (wire_type, nested) {
            (2, Some(t)) => scan(index, t, r.bytes().map_err(|e| format!("{message}: {e}"))?)?,
            _ => r.skip(wire_type).map_err(|e| format!("{message}: field {number}: {e}"))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_payload_message_is_described() {
        for name in [
            "horizon.v1.DomainEvent",
            "horizon.v1.MarketData",
            "horizon.v1.TradingSignal",
            "horizon.v1.RiskThresholdCrossed",
            "horizon.v1.PortfolioRebalanced",
            "horizon.v1.UserNotification",
        ] {
            assert!(index().contains_key(name), "{name} missing from the descriptors");
        }
    }

    #[test]
    fn legal_encodings_of_known_fields_pass_and_unknown_fields_are_named_at_any_depth() {
        use crate::wire::{put_bytes, put_uint};
        // A default written explicitly, and a field written twice (the last one wins).
        let mut decimal = Vec::new();
        put_uint(&mut decimal, 1, 0);
        put_uint(&mut decimal, 2, 0);
        put_uint(&mut decimal, 2, 8);
        assert_eq!(unknown_field("horizon.v1.Decimal", &decimal), None);
        let mut fill = Vec::new();
        put_bytes(&mut fill, 1, b"BTCUSDT");
        put_bytes(&mut fill, 6, &decimal);
        let mut rebalance = Vec::new();
        put_bytes(&mut rebalance, 1, b"p1");
        put_bytes(&mut rebalance, 3, &fill);
        assert_eq!(unknown_field("horizon.v1.PortfolioRebalanced", &rebalance), None);
        // An unknown field two levels down, and a v1 field (reserved since v2) in a fill.
        let mut deep = decimal.clone();
        put_uint(&mut deep, 9, 1);
        let mut fill_deep = fill.clone();
        put_bytes(&mut fill_deep, 4, &deep);
        let mut bad = rebalance.clone();
        put_bytes(&mut bad, 3, &fill_deep);
        assert_eq!(
            unknown_field("horizon.v1.PortfolioRebalanced", &bad).as_deref(),
            Some("field 9 of horizon.v1.Decimal")
        );
        let mut v1_fill = fill.clone();
        put_uint(&mut v1_fill, 2, 1);
        let mut bad = rebalance.clone();
        put_bytes(&mut bad, 3, &v1_fill);
        assert_eq!(
            unknown_field("horizon.v1.PortfolioRebalanced", &bad).as_deref(),
            Some("field 2 of horizon.v1.Fill")
        );
    }
}
