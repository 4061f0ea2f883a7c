//! Recorded markets: a window of a recording as the feed a run publishes.
//!
//! The simulator does no I/O, so the window is read at the edge (`horizon_runtime::recorded::
//! window`, called by the command line) and arrives here as the events the recording yields,
//! trades or bars, in file order. It becomes a `Feed` once per command (`Case::recorded`,
//! shared by every thread's `Runner`): a recording's feed does not depend on the seed, only the
//! fault schedule applied to it does. Feed faults (reconnect replays, gaps, late arrivals)
//! index symbols by the events' aggregate, the symbol for trades and bars alike.

use crate::feed::{Feed, FeedItem};
use horizon_core::event::Event;

impl Feed {
    /// The recorded `events` in virtual time: virtual time 0 is the first event's time (a
    /// trade's exchange time, a bar's end, when it was known), and an event is published at its
    /// time but never before the event ahead of it, so out-of-order times reach the gateway in
    /// file order, as they were recorded.
    pub fn recorded(events: Vec<Event>) -> Feed {
        let origin = events.first().map(|e| e.ts.nanos()).unwrap_or(0);
        let mut feed = Feed::default();
        let mut last = 0u64;
        for event in events {
            last = last.max((event.ts.nanos() - origin).max(0) as u64);
            feed.items.push(FeedItem { at_ns: last, event });
        }
        feed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Fault;
    use horizon_core::event::Bar;
    use horizon_core::feed::bar_event;
    use horizon_core::Timestamp;

    fn bar(minute: i64) -> Event {
        bar_event(Bar {
            symbol: "BTC-PERP".into(),
            exchange: "FTX".into(),
            interval_ms: 60_000,
            start: Timestamp::from_millis(1_640_995_200_000 + minute * 60_000),
            open: "100".parse().unwrap(),
            high: "101".parse().unwrap(),
            low: "99".parse().unwrap(),
            close: "100".parse().unwrap(),
            volume: "1".parse().unwrap(),
            trade_count: 0,
            seq: 0,
        })
    }

    #[test]
    fn a_recording_starts_at_virtual_time_zero_and_keeps_file_order() {
        // Given bars of minutes 5, 6, 4 (out of order) and 8
        let events: Vec<Event> = [5, 6, 4, 8].into_iter().map(bar).collect();
        // When they become a feed
        let f = Feed::recorded(events.clone());
        // Then the first is at 0, the late one waits for the one ahead, the order is the file's
        let at: Vec<u64> = f.items.iter().map(|i| i.at_ns / 1_000_000).collect();
        assert_eq!(at, vec![0, 60_000, 60_000, 180_000]);
        assert_eq!(f.events(), events);
        assert_eq!(f.span_ms(), 180_000);
    }

    #[test]
    fn feed_faults_apply_to_bar_feeds() {
        let f = Feed::recorded((0..30).map(bar).collect());
        let symbols = vec!["BTC-PERP".to_string()];
        let replay = f.with_faults(&[Fault::FeedReconnect { at_ms: 600_000, replay: 3 }], &symbols);
        assert_eq!(replay.items.len(), 33, "three bars replayed");
        let gap = f.with_faults(
            &[Fault::FeedGap {
                at_ms: 60_000,
                for_ms: 120_000,
                symbol: 0,
            }],
            &symbols,
        );
        assert_eq!(gap.items.len(), 28, "two bars lost");
        let late = f.with_faults(
            &[Fault::FeedReorder {
                at_ms: 60_000,
                symbol: 0,
                depth: 2,
            }],
            &symbols,
        );
        assert_eq!(late.items.len(), 30);
        assert_eq!(late.items[3].event.id, f.items[1].event.id, "bar 1 arrives after two later ones");
    }
}
