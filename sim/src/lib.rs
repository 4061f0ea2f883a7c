//! Deterministic simulated Kafka broker (see issue: simulator).
