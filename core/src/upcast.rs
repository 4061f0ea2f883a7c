//! Upcasters: read a payload written at an older schema version as the current version.
//!
//! The envelope's `schema_version` metadata says which shapes its payload has. The domain model
//! knows only the current shapes (`SCHEMA_VERSION`), so the codec first runs an older payload
//! through this chain, one version at a time: `STEPS[0]` turns a v1 payload into v2, the next
//! step (when there is a v3) v2 into v3, and so on. A step works on wire bytes, rewrites only
//! the payload types whose shape changed in its version and passes the others through without
//! copying. A payload that cannot be carried over faithfully is refused with the reason (the
//! record is then dead-lettered), never guessed at.
//!
//! To add version N+1: copy the shapes of the messages that change into
//! `proto/horizon/v1/history.proto` as `<Message>VN`, change `events.proto`, bump
//! `SCHEMA_VERSION`, append `vN_to_vN+1` to `STEPS`, and commit golden fixtures of version N+1
//! next to the older ones (`core/tests/golden.rs`); the older fixtures stay as they are.
//!
//! Pure: bytes in, bytes out.

use crate::event::{decode_known, DecodeError, EventType, SCHEMA_VERSION};
use horizon_proto::v1 as pb;
use prost::Message;
use std::borrow::Cow;

/// Upcasts a payload of version `n` to version `n + 1`: `Ok(None)` when that type's shape did
/// not change in `n + 1`, `Err` with the reason when it cannot be carried over.
type Step = fn(EventType, &[u8]) -> Result<Option<Vec<u8>>, String>;

/// `STEPS[n - 1]` upcasts version `n` to `n + 1`.
const STEPS: [Step; SCHEMA_VERSION as usize - 1] = [v1_to_v2];

/// The payload of an event of type `declared` written at schema `version`, in the current
/// version's shape. Borrows when nothing changed (always so at the current version).
pub fn upcast(declared: EventType, version: u32, payload: &[u8]) -> Result<Cow<'_, [u8]>, DecodeError> {
    if version == 0 {
        return Err(DecodeError::Invalid("metadata.schema_version", "0 (versions start at 1)".into()));
    }
    if version > SCHEMA_VERSION {
        return Err(DecodeError::NewerSchema(version));
    }
    let mut bytes = Cow::Borrowed(payload);
    for from in version..SCHEMA_VERSION {
        let step = STEPS[from as usize - 1];
        let next = step(declared, &bytes).map_err(|reason| DecodeError::Upcast {
            from,
            to: from + 1,
            reason,
        })?;
        if let Some(next) = next {
            bytes = Cow::Owned(next);
        }
    }
    Ok(bytes)
}

/// v2: a rebalance's `Fill` carries the change of position as one signed quantity
/// (`signed_quantity`, positive bought, negative sold) instead of `side` and an unsigned
/// `quantity`. A v1 fill must therefore have a side of BUY or SELL and a positive quantity: with
/// anything else its direction is not known, and the fill is refused rather than guessed.
fn v1_to_v2(declared: EventType, payload: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if declared != EventType::PortfolioRebalanced {
        return Ok(None);
    }
    let old = decode_known::<pb::PortfolioRebalancedV1>(payload, declared).map_err(|e| e.to_string())?;
    let fills = old
        .fills
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let q = f.quantity.ok_or_else(|| format!("missing field `rebalance.fills[{i}].quantity`"))?;
            if q.units <= 0 {
                return Err(format!(
                    "`rebalance.fills[{i}].quantity` is {} units at scale {}: a v1 quantity must be positive, its side gives the direction",
                    q.units, q.scale
                ));
            }
            let units = match pb::Side::try_from(f.side) {
                Ok(pb::Side::Buy) => q.units,
                Ok(pb::Side::Sell) => -q.units,
                _ => return Err(format!("`rebalance.fills[{i}].side` {} is not BUY or SELL", f.side)),
            };
            Ok(pb::Fill {
                symbol: f.symbol,
                price: f.price,
                fee: f.fee,
                signed_quantity: Some(pb::Decimal { units, scale: q.scale }),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let new = pb::PortfolioRebalanced {
        portfolio_id: old.portfolio_id,
        reason: old.reason,
        fills,
        positions: old.positions,
        cash: old.cash,
        value: old.value,
        realized_pnl: old.realized_pnl,
        unrealized_pnl: old.unrealized_pnl,
        fees: old.fees,
    };
    Ok(Some(new.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(units: i64) -> Option<pb::Decimal> {
        Some(pb::Decimal { units, scale: 8 })
    }

    fn v1_fill(side: pb::Side, units: i64) -> pb::FillV1 {
        pb::FillV1 {
            symbol: "BTCUSDT".into(),
            side: side as i32,
            quantity: dec(units),
            price: dec(6_000_000_000_000),
            fee: dec(12_345),
        }
    }

    fn v1_rebalance(fills: Vec<pb::FillV1>) -> Vec<u8> {
        pb::PortfolioRebalancedV1 {
            portfolio_id: "alpha".into(),
            reason: pb::RebalanceReason::Signal as i32,
            fills,
            cash: dec(1),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn the_current_version_and_unchanged_types_are_borrowed_not_copied() {
        let payload = v1_rebalance(vec![v1_fill(pb::Side::Buy, 5)]);
        assert!(matches!(
            upcast(EventType::PortfolioRebalanced, SCHEMA_VERSION, &payload).unwrap(),
            Cow::Borrowed(_)
        ));
        for t in EventType::ALL.into_iter().filter(|t| *t != EventType::PortfolioRebalanced) {
            assert!(matches!(upcast(t, 1, b"\x0a\x00").unwrap(), Cow::Borrowed(_)), "{t}");
        }
    }

    #[test]
    fn v1_fills_become_signed_quantities() {
        let payload = v1_rebalance(vec![v1_fill(pb::Side::Buy, 5), v1_fill(pb::Side::Sell, 7)]);
        let v2 = upcast(EventType::PortfolioRebalanced, 1, &payload).unwrap();
        let r = pb::PortfolioRebalanced::decode(&v2[..]).unwrap();
        let signed: Vec<i64> = r.fills.iter().map(|f| f.signed_quantity.unwrap().units).collect();
        assert_eq!(signed, [5, -7]);
        assert_eq!((r.portfolio_id.as_str(), r.reason, r.cash), ("alpha", 1, dec(1)));
        assert_eq!((r.fills[1].price, r.fills[1].fee), (dec(6_000_000_000_000), dec(12_345)));
    }

    #[test]
    fn a_v1_fill_without_a_direction_is_refused_with_the_reason() {
        let cases = [
            (v1_fill(pb::Side::Unspecified, 5), "`rebalance.fills[0].side` 0 is not BUY or SELL"),
            (v1_fill(pb::Side::Buy, 0), "`rebalance.fills[0].quantity` is 0 units"),
            (v1_fill(pb::Side::Sell, -5), "`rebalance.fills[0].quantity` is -5 units"),
            (
                pb::FillV1 {
                    quantity: None,
                    ..v1_fill(pb::Side::Buy, 1)
                },
                "missing field `rebalance.fills[0].quantity`",
            ),
        ];
        for (fill, want) in cases {
            let err = upcast(EventType::PortfolioRebalanced, 1, &v1_rebalance(vec![fill])).unwrap_err();
            assert!(matches!(err, DecodeError::Upcast { from: 1, to: 2, .. }), "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn a_v2_payload_labelled_v1_is_refused_not_misread() {
        let v2 = pb::PortfolioRebalanced {
            portfolio_id: "alpha".into(),
            reason: 1,
            fills: vec![pb::Fill {
                symbol: "BTCUSDT".into(),
                signed_quantity: dec(-5),
                price: dec(1),
                fee: dec(0),
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let err = upcast(EventType::PortfolioRebalanced, 1, &v2).unwrap_err();
        assert!(err.to_string().contains("does not know"), "{err}");
    }

    #[test]
    fn versions_out_of_range_are_refused() {
        assert_eq!(
            upcast(EventType::PortfolioRebalanced, SCHEMA_VERSION + 1, b"").unwrap_err(),
            DecodeError::NewerSchema(SCHEMA_VERSION + 1)
        );
        assert!(matches!(
            upcast(EventType::PortfolioRebalanced, 0, b"").unwrap_err(),
            DecodeError::Invalid("metadata.schema_version", _)
        ));
    }
}
