//! Golden wire fixtures: committed bytes of one event of every type at every schema version.
//!
//! `fixtures/wire/vN/NAME.bin` is the record as a version-N producer wrote it and
//! `fixtures/wire/decoded/NAME.json` the event it must decode to in today's model; an older
//! version's bytes reach that model through the upcasters (`horizon_core::upcast`). Encoding
//! the decoded event must give exactly the current version's bytes. So a change to the schema,
//! the codec or an upcaster that would break other producers or consumers (or old logs) fails
//! here, and the committed bytes, not this file's code, are the contract.
//!
//! The v1 bytes were written by the v1 build (commit 1a9a34c, before the v2 change), except
//! `portfolio_rebalanced_signal`, which was added with v2 and written by `encode_v1` below, a
//! writer of the v1 shapes that reproduces the v1 build's bytes exactly (tested).
//!
//! To (re)write fixtures deliberately, after a schema change or to add an event:
//! `cargo test -p horizon-core --test golden -- --ignored bless`. It rewrites the decoded
//! events and the current version's bytes, and writes an older version's bytes only where they
//! are missing (with that version's writer); it never rewrites them. Review the diff.

use horizon_core::event::*;
use horizon_core::fixed::SCALE;
use horizon_core::{wire, Fixed, Timestamp};
use horizon_proto::v1 as pb;
use prost::Message;
use std::path::PathBuf;

fn fx(s: &str) -> Fixed {
    s.parse().unwrap()
}

fn bar() -> Bar {
    Bar {
        symbol: "BTCUSDT".into(),
        exchange: "SIM".into(),
        interval_ms: 60_000,
        start: Timestamp::parse_rfc3339("2024-03-01T04:00:00Z").unwrap(),
        open: fx("62010.5"),
        high: fx("62100"),
        low: fx("61900.25"),
        close: fx("61950"),
        volume: fx("12.3456"),
        trade_count: 42,
        seq: 240,
    }
}

fn events() -> Vec<(&'static str, Event)> {
    let trade = Trade {
        symbol: "BTCUSDT".into(),
        exchange: "SIM".into(),
        trade_id: "1001".into(),
        price: fx("62010.5"),
        quantity: fx("0.015"),
        aggressor_side: Side::Sell,
        ts_exchange: Timestamp(1_709_265_600_123_456_789),
    };
    let root = Event::root(
        root_id(&["SIM", "BTCUSDT", "1001"]),
        "BTCUSDT".into(),
        trade.ts_exchange,
        "feed",
        Payload::Trade(trade),
    );
    let bar_ev = Event::derived(&root, "market", 0, "BTCUSDT".into(), bar().end(), Payload::Bar(bar()));
    let signal = Event::derived(
        &bar_ev,
        "signals",
        0,
        "alpha".into(),
        bar().end(),
        Payload::Signal(Signal {
            portfolio_id: "alpha".into(),
            symbol: "BTCUSDT".into(),
            direction: Direction::Long,
            strength: fx("0.75"),
            target_weight: fx("0.225"),
            bar: bar(),
            strategies: vec![StrategyView {
                strategy: "ema_crossover".into(),
                direction: Direction::Long,
                strength: fx("0.75"),
            }],
            changed: true,
        }),
    );
    let risk = Event::derived(
        &signal,
        "portfolio",
        0,
        "alpha".into(),
        bar().end(),
        Payload::Risk(RiskCrossing {
            portfolio_id: "alpha".into(),
            kind: RiskKind::Drawdown,
            symbol: String::new(),
            crossing: Crossing::Entered,
            value: fx("0.0123"),
            threshold: fx("0.012"),
        }),
    );
    let rebalance = Event::derived(
        &risk,
        "portfolio",
        1,
        "alpha".into(),
        bar().end(),
        Payload::Rebalance(Rebalance {
            portfolio_id: "alpha".into(),
            reason: RebalanceReason::Derisk,
            fills: vec![Fill {
                symbol: "BTCUSDT".into(),
                side: Side::Sell,
                quantity: fx("1.5"),
                price: fx("61937.61"),
                fee: fx("37.162566"),
            }],
            positions: vec![Position {
                symbol: "BTCUSDT".into(),
                quantity: fx("0.5"),
                avg_price: fx("60000"),
                mark_price: fx("61950"),
            }],
            cash: fx("950000.1"),
            value: fx("980975.1"),
            realized_pnl: fx("2906.415"),
            unrealized_pnl: fx("975"),
            fees: fx("120.5"),
        }),
    );
    let notification = Event::derived(
        &risk,
        "notify",
        0,
        "alice".into(),
        bar().end(),
        Payload::Notification(Notification {
            user_id: "alice".into(),
            source_type: EventType::RiskThresholdCrossed,
            source_event_id: risk.id.clone(),
            symbol: String::new(),
            severity: Severity::Critical,
            message: "drawdown crossed at 0.0123 (threshold 0.012)".into(),
        }),
    );
    // A rebalance with a fill each way, so that both signs of a v2 fill are pinned.
    let signal_rebalance = Event::derived(
        &signal,
        "portfolio",
        2,
        "alpha".into(),
        bar().end(),
        Payload::Rebalance(Rebalance {
            portfolio_id: "alpha".into(),
            reason: RebalanceReason::Signal,
            fills: vec![
                Fill {
                    symbol: "ETHUSDT".into(),
                    side: Side::Sell,
                    quantity: fx("2"),
                    price: fx("3398.3"),
                    fee: fx("6.7966"),
                },
                Fill {
                    symbol: "BTCUSDT".into(),
                    side: Side::Buy,
                    quantity: fx("0.125"),
                    price: fx("61962.39"),
                    fee: fx("7.74529875"),
                },
            ],
            positions: vec![Position {
                symbol: "BTCUSDT".into(),
                quantity: fx("0.625"),
                avg_price: fx("60392.478"),
                mark_price: fx("61950"),
            }],
            cash: fx("942449.93"),
            value: fx("981168.68"),
            realized_pnl: fx("2906.415"),
            unrealized_pnl: fx("973.45125"),
            fees: fx("134.94189875"),
        }),
    );
    vec![
        ("market_data_trade", root),
        ("market_data_bar", bar_ev),
        ("trading_signal", signal),
        ("risk_threshold", risk),
        ("portfolio_rebalanced", rebalance),
        ("user_notification", notification),
        ("portfolio_rebalanced_signal", signal_rebalance),
    ]
}

/// The fixtures the v1 build wrote (all but the ones added later).
const WRITTEN_BY_THE_V1_BUILD: [&str; 6] = [
    "market_data_trade",
    "market_data_bar",
    "trading_signal",
    "risk_threshold",
    "portfolio_rebalanced",
    "user_notification",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire")
}

fn bin(version: u32, name: &str) -> PathBuf {
    root().join(format!("v{version}/{name}.bin"))
}

fn decoded(name: &str) -> PathBuf {
    root().join(format!("decoded/{name}.json"))
}

fn read_bin(version: u32, name: &str) -> Vec<u8> {
    let path = bin(version, name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (see core/tests/golden.rs on writing fixtures)", path.display()))
}

fn read_decoded(name: &str) -> Event {
    let path = decoded(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dec(x: Fixed) -> Option<pb::Decimal> {
    Some(pb::Decimal {
        units: x.units(),
        scale: SCALE,
    })
}

/// The bytes a v1 producer wrote for `e`: the v1 shapes (`history.proto`) and
/// `schema_version` "1"; everything else is as today.
fn encode_v1(e: &Event) -> Vec<u8> {
    let current = e.encode();
    let env = wire::decode_envelope(&current).unwrap();
    let payload = match &e.payload {
        Payload::Rebalance(r) => {
            // Today's payload with the fills in their v1 shape.
            let v2 = pb::PortfolioRebalanced::decode(env.payload).unwrap();
            let fills = r.fills.iter().map(|f| pb::FillV1 {
                symbol: f.symbol.clone(),
                side: match f.side {
                    Side::Buy => pb::Side::Buy,
                    Side::Sell => pb::Side::Sell,
                } as i32,
                quantity: dec(f.quantity),
                price: dec(f.price),
                fee: dec(f.fee),
            });
            pb::PortfolioRebalancedV1 {
                portfolio_id: v2.portfolio_id,
                reason: v2.reason,
                fills: fills.collect(),
                positions: v2.positions,
                cash: v2.cash,
                value: v2.value,
                realized_pnl: v2.realized_pnl,
                unrealized_pnl: v2.unrealized_pnl,
                fees: v2.fees,
            }
            .encode_to_vec()
        }
        _ => env.payload.to_vec(),
    };
    let metadata: Vec<(&str, &str)> = env
        .metadata
        .iter()
        .map(|&(k, v)| if k == meta_key::SCHEMA_VERSION { (k, "1") } else { (k, v) })
        .collect();
    let mut out = Vec::new();
    wire::encode_envelope(&mut out, env.event_id, env.aggregate_id, env.event_type, e.ts, &payload, &metadata);
    out
}

/// The writer of each older version, by version (index 0 is v1).
const OLDER_WRITERS: [fn(&Event) -> Vec<u8>; SCHEMA_VERSION as usize - 1] = [encode_v1];

#[test]
fn every_versions_bytes_decode_to_the_current_model() {
    for version in 1..=SCHEMA_VERSION {
        for (name, _) in events() {
            let got = Event::decode(&read_bin(version, name)).unwrap_or_else(|e| panic!("v{version}/{name}: {e}"));
            assert_eq!(got, read_decoded(name), "v{version}/{name}: decoding the committed bytes");
            assert_eq!(got.meta.schema_version, SCHEMA_VERSION, "v{version}/{name}");
        }
    }
}

#[test]
fn the_current_model_encodes_to_the_current_versions_bytes() {
    for (name, event) in events() {
        let expected = read_decoded(name);
        assert_eq!(event, expected, "{name}: today's code still builds the committed event");
        assert!(
            expected.encode() == read_bin(SCHEMA_VERSION, name),
            "{name}: encoding no longer gives the committed v{SCHEMA_VERSION} bytes"
        );
    }
}

#[test]
fn the_v1_writer_reproduces_the_v1_builds_bytes() {
    for name in WRITTEN_BY_THE_V1_BUILD {
        assert!(
            encode_v1(&read_decoded(name)) == read_bin(1, name),
            "{name}: encode_v1 differs from the v1 build's bytes"
        );
    }
}

#[test]
fn the_current_fixtures_labelled_with_a_newer_version_are_refused() {
    let newer = (SCHEMA_VERSION + 1).to_string();
    for (name, _) in events() {
        let mut env = pb::DomainEvent::decode(read_bin(SCHEMA_VERSION, name).as_slice()).unwrap();
        env.metadata.insert(meta_key::SCHEMA_VERSION.into(), newer.clone());
        let relabelled = env.encode_to_vec();
        let err = Event::decode(&relabelled).unwrap_err();
        assert_eq!(err, DecodeError::NewerSchema(SCHEMA_VERSION + 1), "{name}");
    }
}

/// Writes the fixtures; see the header.
#[test]
#[ignore = "rewrites the committed fixtures; run deliberately"]
fn bless() {
    for version in 1..=SCHEMA_VERSION {
        std::fs::create_dir_all(root().join(format!("v{version}"))).unwrap();
    }
    std::fs::create_dir_all(root().join("decoded")).unwrap();
    for (name, event) in events() {
        std::fs::write(decoded(name), serde_json::to_string_pretty(&event).unwrap() + "\n").unwrap();
        std::fs::write(bin(SCHEMA_VERSION, name), event.encode()).unwrap();
        for (i, writer) in OLDER_WRITERS.iter().enumerate() {
            let path = bin(i as u32 + 1, name);
            if !path.exists() {
                std::fs::write(path, writer(&event)).unwrap();
            }
        }
    }
}
