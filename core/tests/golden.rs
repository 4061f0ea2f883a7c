//! Golden wire fixtures: committed bytes of one event of every type at every schema version.
//!
//! Decoding each fixture must give exactly the committed event, and encoding that event must
//! give exactly the committed bytes, so a change to the schema or the codec that would break
//! other producers or consumers (or old logs) fails here. To add a version's fixtures
//! deliberately: `HORIZON_BLESS_FIXTURES=1 cargo test -p horizon-core --test golden`.

use horizon_core::event::*;
use horizon_core::{Fixed, Timestamp};
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
    vec![
        ("market_data_trade", root),
        ("market_data_bar", bar_ev),
        ("trading_signal", signal),
        ("risk_threshold", risk),
        ("portfolio_rebalanced", rebalance),
        ("user_notification", notification),
    ]
}

fn dir(version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/wire/v{version}"))
}

#[test]
fn every_version_decodes_to_its_committed_event_and_encodes_to_its_committed_bytes() {
    let bless = std::env::var_os("HORIZON_BLESS_FIXTURES").is_some();
    let d = dir(SCHEMA_VERSION);
    for (name, event) in events() {
        let bin = d.join(format!("{name}.bin"));
        let json = d.join(format!("{name}.json"));
        if bless {
            std::fs::write(&bin, event.encode()).unwrap();
            std::fs::write(&json, serde_json::to_string_pretty(&event).unwrap()).unwrap();
        }
        let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e} (bless with HORIZON_BLESS_FIXTURES=1)", bin.display()));
        let expected: Event = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(Event::decode(&bytes).unwrap(), expected, "{name}: decoding the committed bytes");
        assert_eq!(expected.encode(), bytes, "{name}: encoding is byte-stable");
        assert_eq!(event, expected, "{name}: today's model still builds the committed event");
    }
}
