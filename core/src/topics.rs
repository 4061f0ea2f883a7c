//! The topics, their keys and partition counts. The README's topic table mirrors this list.
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

#[derive(Clone, Copy, Debug)]
pub struct TopicSpec {
    pub name: Topic,
    pub partitions: u32,
    /// What the record key is.
    pub key: &'static str,
    pub producer: &'static str,
    pub holds: &'static str,
}

pub const ALL: [TopicSpec; 7] = [
    TopicSpec {
        name: MARKET_FEED,
        partitions: 6,
        key: "symbol",
        producer: "feed (market-data gateway)",
        holds: "MARKET_DATA_RECEIVED: trades, or bars from a bar recording",
    },
    TopicSpec {
        name: BARS,
        partitions: 6,
        key: "symbol",
        producer: "market",
        holds: "MARKET_DATA_RECEIVED: OHLCV bars",
    },
    TopicSpec {
        name: SIGNALS,
        partitions: 3,
        key: "portfolio id",
        producer: "signals",
        holds: "TRADING_SIGNAL_GENERATED",
    },
    TopicSpec {
        name: RISK,
        partitions: 3,
        key: "portfolio id",
        producer: "portfolio",
        holds: "RISK_THRESHOLD_CROSSED",
    },
    TopicSpec {
        name: PORTFOLIO,
        partitions: 3,
        key: "portfolio id",
        producer: "portfolio",
        holds: "PORTFOLIO_REBALANCED",
    },
    TopicSpec {
        name: NOTIFICATIONS,
        partitions: 3,
        key: "user id",
        producer: "portfolio",
        holds: "USER_NOTIFICATION_TRIGGERED",
    },
    TopicSpec {
        name: DEADLETTER,
        partitions: 1,
        key: "source topic/partition/offset",
        producer: "any service",
        holds: "DeadLetter: reason, original bytes, source",
    },
];

pub fn spec(name: &str) -> Option<&'static TopicSpec> {
    ALL.iter().find(|t| t.name == name)
}

/// The static name for a topic string (as a broker client reports it).
pub fn by_name(name: &str) -> Option<Topic> {
    spec(name).map(|s| s.name)
}

pub fn partitions(topic: Topic) -> u32 {
    spec(topic).map(|s| s.partitions).unwrap_or(1)
}
