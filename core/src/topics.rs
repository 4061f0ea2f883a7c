//! The shipped topics, their keys and partition counts: the topic half of the shipped
//! `Topology`, whose table (`Topology::topic_table`) the README's mirrors.
//!
//! Keys keep order where the domain needs it: everything about one symbol's market data on one
//! partition, everything one portfolio decides on one partition.

use crate::bus::Topic;

pub const MARKET_FEED: Topic = "market.feed";
pub const BARS: Topic = "market.bars";
pub const SIGNALS: Topic = "signals";
pub const RISK: Topic = "risk";
pub const PORTFOLIO: Topic = "portfolio";
pub const NOTIFICATIONS: Topic = "notifications";
pub const DEADLETTER: Topic = "deadletter";

pub use crate::topology::TopicSpec;

/// The shipped topics; who produces and who owns each is the shipped topology's to say
/// (`Topology::producers`, `Topology::owner`).
pub const ALL: [TopicSpec; 7] = [
    TopicSpec {
        name: MARKET_FEED,
        partitions: 6,
        key: "symbol",
        holds: "MARKET_DATA_RECEIVED: trades, or bars from a bar recording",
    },
    TopicSpec {
        name: BARS,
        partitions: 6,
        key: "symbol",
        holds: "MARKET_DATA_RECEIVED: OHLCV bars",
    },
    TopicSpec {
        name: SIGNALS,
        partitions: 3,
        key: "portfolio id",
        holds: "TRADING_SIGNAL_GENERATED",
    },
    TopicSpec {
        name: RISK,
        partitions: 3,
        key: "portfolio id",
        holds: "RISK_THRESHOLD_CROSSED",
    },
    TopicSpec {
        name: PORTFOLIO,
        partitions: 3,
        key: "portfolio id",
        holds: "PORTFOLIO_REBALANCED",
    },
    TopicSpec {
        name: NOTIFICATIONS,
        partitions: 3,
        key: "user id",
        holds: "USER_NOTIFICATION_TRIGGERED",
    },
    TopicSpec {
        name: DEADLETTER,
        partitions: 1,
        key: "source topic/partition/offset",
        holds: "DeadLetter: reason, original bytes, source",
    },
];

fn spec(name: &str) -> Option<&'static TopicSpec> {
    ALL.iter().find(|t| t.name == name)
}

/// Partitions of a shipped topic (1 for another).
pub fn partitions(topic: Topic) -> u32 {
    spec(topic).map(|s| s.partitions).unwrap_or(1)
}
