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
    /// The stage that dead-letters a record of this topic that does not decode; every other
    /// consumer counts it and moves on, so a bad record gives one dead letter, not one per
    /// consumer. (Not a stage name for `deadletter`: nothing dead-letters a dead letter.)
    pub owner: &'static str,
    pub holds: &'static str,
}

pub const ALL: [TopicSpec; 7] = [
    TopicSpec {
        name: MARKET_FEED,
        owner: "market",
        partitions: 6,
        key: "symbol",
        producer: "feed (market-data gateway)",
        holds: "MARKET_DATA_RECEIVED: trades, or bars from a bar recording",
    },
    TopicSpec {
        name: BARS,
        owner: "signals",
        partitions: 6,
        key: "symbol",
        producer: "market",
        holds: "MARKET_DATA_RECEIVED: OHLCV bars",
    },
    TopicSpec {
        name: SIGNALS,
        owner: "portfolio",
        partitions: 3,
        key: "portfolio id",
        producer: "signals",
        holds: "TRADING_SIGNAL_GENERATED",
    },
    TopicSpec {
        name: RISK,
        owner: "projections",
        partitions: 3,
        key: "portfolio id",
        producer: "portfolio",
        holds: "RISK_THRESHOLD_CROSSED",
    },
    TopicSpec {
        name: PORTFOLIO,
        owner: "projections",
        partitions: 3,
        key: "portfolio id",
        producer: "portfolio",
        holds: "PORTFOLIO_REBALANCED",
    },
    TopicSpec {
        name: NOTIFICATIONS,
        owner: "projections",
        partitions: 3,
        key: "user id",
        producer: "portfolio",
        holds: "USER_NOTIFICATION_TRIGGERED",
    },
    TopicSpec {
        name: DEADLETTER,
        owner: "none",
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

/// Whether `stage` owns `topic` (see `TopicSpec::owner`); true for a topic outside the table.
pub fn owned_by(topic: Topic, stage: &str) -> bool {
    spec(topic).is_none_or(|s| s.owner == stage)
}

pub fn partitions(topic: Topic) -> u32 {
    spec(topic).map(|s| s.partitions).unwrap_or(1)
}
