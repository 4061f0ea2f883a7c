//! The market-data gateway's publishing side (`horizon feed`): a scenario's feed events onto
//! `market.feed`, keyed by symbol, at full speed or paced to a rate.
//!
//! Events go out in chunks; each chunk is flushed (acknowledged by the broker) before the next.
//! A chunk that fails is sent again whole after a bounded exponential backoff: the records that
//! did arrive are then on the topic twice, which is harmless because a feed event's id is
//! derived from its content and the market service drops duplicates by id.

use crate::service::Backoff;
use horizon_core::bus::{partition_for, BusError, Producer};
use horizon_core::event::Event;
use horizon_core::topics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FeedReport {
    pub events: u64,
    pub chunks_resent: u64,
    pub elapsed_ms: u64,
    pub stopped_early: bool,
}

pub struct FeedOptions {
    /// Events per second; `None` for full speed.
    pub rate: Option<f64>,
    pub backoff: Backoff,
    /// Give up on a chunk after retrying it this long.
    pub give_up_after: Duration,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions {
            rate: None,
            backoff: Backoff::default(),
            give_up_after: Duration::from_secs(300),
        }
    }
}

/// Publishes `events`; returns early (with `stopped_early`) when `stop` is set.
pub fn publish(
    producer: &mut dyn Producer,
    events: &mut dyn Iterator<Item = Event>,
    options: &FeedOptions,
    stop: &AtomicBool,
) -> Result<FeedReport, BusError> {
    let parts = topics::partitions(topics::MARKET_FEED);
    // Paced: chunks of ~5 ms of events; full speed: large chunks.
    let chunk = match options.rate {
        Some(r) => ((r / 200.0) as usize).clamp(1, 10_000),
        None => 10_000,
    };
    let start = Instant::now();
    let mut report = FeedReport::default();
    let mut buf: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(chunk);
    loop {
        buf.clear();
        for e in (&mut *events).take(chunk) {
            let value = e.encode();
            buf.push((e.aggregate_id.into_bytes(), value));
        }
        if buf.is_empty() {
            break;
        }
        if let Some(rate) = options.rate {
            let due = start + Duration::from_secs_f64(report.events as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let mut attempt = 0;
        let first_failure = Instant::now();
        loop {
            let sent = buf
                .iter()
                .try_for_each(|(k, v)| producer.send(topics::MARKET_FEED, partition_for(k, parts), k, v))
                .and_then(|()| producer.flush());
            match sent {
                Ok(()) => break,
                Err(e) if e.is_retriable() && first_failure.elapsed() < options.give_up_after => {
                    let delay = options.backoff.delay(attempt);
                    eprintln!("horizon: feed: {e}; sending the chunk again in {delay:?}");
                    attempt += 1;
                    report.chunks_resent += 1;
                    std::thread::sleep(delay);
                }
                Err(e) => return Err(e),
            }
        }
        report.events += buf.len() as u64;
        if stop.load(Ordering::SeqCst) {
            report.stopped_early = true;
            break;
        }
    }
    report.elapsed_ms = start.elapsed().as_millis() as u64;
    Ok(report)
}
