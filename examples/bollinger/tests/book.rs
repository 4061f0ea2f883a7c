//! `alert-book`: alerts applied once by id, in event order whatever the delivery order, counted
//! so that a double application would show.

mod common;

use common::{bar, bar_event, bar_of, fx, MINUTE};
use horizon_core::event::{Event, Severity};
use horizon_core::service::{ReadModel, Service, Tally};
use horizon_example_bollinger::alerts::{BandAlerts, BandAlertsConfig, BandState};
use horizon_example_bollinger::book::{AlertBook, Book};
use proptest::prelude::*;

/// Alerts of two symbols, from `band-alerts` itself: a band [90, 110] then closes far out.
fn alerts() -> Vec<Event> {
    let svc = BandAlerts::new(BandAlertsConfig {
        interval_ms: MINUTE,
        window: 2,
        k: fx("1"),
        audience: "alpha".into(),
    });
    let mut state = BandState::default();
    let mut out = Vec::new();
    for symbol in ["BTCUSDT", "SOLUSDT"] {
        for (i, c) in ["90", "110", "150", "60", "300", "100"].iter().enumerate() {
            svc.handle(&mut state, &bar_event(&bar_of(symbol, i as u64, fx(c))), &mut out)
                .unwrap();
        }
    }
    assert!(out.len() >= 6, "{out:?}");
    out.into_iter().map(|o| o.event).collect()
}

fn apply(events: &[Event]) -> Book {
    let mut book = Book::default();
    for e in events {
        AlertBook.handle(&mut book, e, &mut Vec::new()).unwrap();
    }
    book
}

#[test]
fn each_alert_is_applied_once_and_counted_once() {
    let events = alerts();
    // Given a book that applied every alert,
    let once = apply(&events);
    // when every alert is applied again,
    let mut twice = once.clone();
    for e in &events {
        AlertBook.handle(&mut twice, e, &mut Vec::new()).unwrap();
    }
    // then nothing changes, every alert shows as applied, and the tallies agree.
    assert_eq!(twice, once);
    assert!(events.iter().all(|e| AlertBook.applied(&once, &e.id)));
    assert!(!AlertBook.applied(&once, "no such alert"));
    let n = events.len() as u64;
    assert_eq!(
        AlertBook.tallies(&once),
        [
            Tally {
                what: "alerts".into(),
                counted: n,
                distinct: n
            },
            Tally {
                what: "listed alerts".into(),
                counted: n,
                distinct: n
            },
        ]
    );
    assert_eq!(once.of("BTCUSDT").len() + once.of("SOLUSDT").len(), events.len());
    assert_eq!(once.counts["BTCUSDT"].total(), once.of("BTCUSDT").len() as u64);
    assert!(AlertBook.same_state(&twice, &once));
}

#[test]
fn a_double_count_shows_in_the_tallies() {
    // Given a book whose counts were bumped without a new id (a read model applying twice),
    let mut book = apply(&alerts());
    book.counts.get_mut("BTCUSDT").unwrap().info += 1;
    // then its tally counts more than it holds.
    let t = &AlertBook.tallies(&book)[0];
    assert_eq!(t.counted, t.distinct + 1);
}

#[test]
fn alerts_are_listed_in_event_order_with_their_severity() {
    let book = apply(&alerts());
    let rows = book.of("BTCUSDT");
    assert!(rows.windows(2).all(|w| w[0].ts < w[1].ts));
    assert!(rows.iter().any(|r| r.severity != Severity::Info));
    assert!(
        rows[0].message.starts_with("BTCUSDT closed at 150 above the upper band 110"),
        "{}",
        rows[0].message
    );
}

#[test]
fn an_event_that_is_not_an_alert_is_rejected_naming_it() {
    let err = AlertBook
        .handle(&mut Book::default(), &bar_event(&bar(0, "1")), &mut Vec::new())
        .unwrap_err();
    assert_eq!(err.0, "MARKET_DATA_RECEIVED does not belong on alerts");
}

#[test]
fn the_book_round_trips_through_its_snapshot_bytes() {
    let book = apply(&alerts());
    let bytes = AlertBook.encode_state(&book).unwrap();
    assert_eq!(AlertBook.decode_state(&bytes).unwrap(), book);
    assert!(AlertBook.decode_state(b"nope").is_none());
}

proptest! {
    /// Any delivery order, with any alerts delivered again, gives the book (and digests) of the
    /// alerts applied once in order.
    #[test]
    fn any_order_and_duplication_gives_the_same_book(
        order in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle(),
        again in proptest::collection::vec(0..12usize, 0..12),
    ) {
        let events = alerts();
        let reference = apply(&events);
        let delivered: Vec<Event> = order
            .iter()
            .chain(&again)
            .filter_map(|i| events.get(*i).cloned())
            .collect();
        let book = apply(&delivered);
        prop_assert_eq!(AlertBook.digests(&book), AlertBook.digests(&reference));
        prop_assert_eq!(book, reference);
    }
}
