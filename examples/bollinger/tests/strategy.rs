//! `bollinger` as the signals service sees it: bands, edges, warm-up, parameters, state.

mod common;

use common::{bar, params};
use horizon_core::event::Direction;
use horizon_core::strategy::{BuildError, Strategy};
use horizon_core::Fixed;
use horizon_example_bollinger::registry;
use horizon_example_bollinger::strategy::NAME;

fn bollinger(text: &str) -> Box<dyn Strategy> {
    registry().slot(NAME, Fixed::ONE, params(text)).unwrap().build()
}

/// A strategy of window 2, k = 1 that has seen closes 90 and 110: mean 100, sd 10, band
/// [90, 110].
fn warmed() -> Box<dyn Strategy> {
    let mut s = bollinger("window = 2\nk = \"1\"");
    s.on_bar(&bar(0, "90"));
    s.on_bar(&bar(1, "110"));
    s
}

#[test]
fn the_view_is_flat_until_the_window_is_full() {
    // Given a strategy with a window of 3,
    let mut s = bollinger("window = 3\nk = \"1\"");
    // when it sees three bars, the third far from the first two,
    let views: Vec<_> = ["100", "101", "500"]
        .iter()
        .enumerate()
        .map(|(i, c)| s.on_bar(&bar(i as u64, c)))
        .collect();
    // then every view is flat (no band before three closes), and labelled.
    assert!(
        views.iter().all(|v| v.direction == Direction::Flat && v.strength == Fixed::ZERO),
        "{views:?}"
    );
    assert!(views.iter().all(|v| v.strategy == NAME));
}

#[test]
fn a_close_exactly_on_a_band_edge_is_inside() {
    // Given the band [90, 110],
    // when the close is exactly on the upper edge, or on the lower edge,
    let upper = warmed().on_bar(&bar(2, "110"));
    let lower = warmed().on_bar(&bar(2, "90"));
    // then the view is flat.
    assert_eq!((upper.direction, upper.strength), (Direction::Flat, Fixed::ZERO));
    assert_eq!((lower.direction, lower.strength), (Direction::Flat, Fixed::ZERO));
}

#[test]
fn below_the_lower_band_is_long_and_above_the_upper_is_short() {
    // Given the band [90, 110],
    // when a close is one unit below it, or one above,
    let below = warmed().on_bar(&bar(2, "89.99999999"));
    let above = warmed().on_bar(&bar(2, "110.00000001"));
    // then it reverts: long below, short above, at half strength just past the edge,
    assert_eq!((below.direction, below.strength), (Direction::Long, Fixed::from_units(50_000_000)));
    assert_eq!((above.direction, above.strength), (Direction::Short, Fixed::from_units(50_000_000)));
    // and two half-widths out or more is full strength.
    assert_eq!(warmed().on_bar(&bar(2, "80")).strength, Fixed::ONE);
    assert_eq!(warmed().on_bar(&bar(2, "150")).strength, Fixed::ONE);
}

#[test]
fn back_inside_the_band_is_flat_again() {
    // Given a strategy gone long on a close below its band,
    let mut s = bollinger("window = 3\nk = \"1\"");
    for (i, c) in ["100", "102", "98"].iter().enumerate() {
        s.on_bar(&bar(i as u64, c));
    }
    assert_eq!(s.on_bar(&bar(3, "90")).direction, Direction::Long);
    // when the next close is back inside the band of the last three,
    let v = s.on_bar(&bar(4, "96"));
    // then it is flat.
    assert_eq!(v.direction, Direction::Flat, "{v:?}");
}

#[test]
fn a_window_of_equal_closes_has_no_band_and_stays_flat() {
    let mut s = bollinger("window = 2\nk = \"2\"");
    s.on_bar(&bar(0, "100"));
    s.on_bar(&bar(1, "100"));
    assert_eq!(s.on_bar(&bar(2, "101")).direction, Direction::Flat);
}

#[test]
fn bad_parameters_are_refused_naming_the_key() {
    let refused = |text: &str| match registry().slot(NAME, Fixed::ONE, params(text)).unwrap_err() {
        BuildError::Params(p) => (p.key, p.problem),
        other => panic!("{other}"),
    };
    assert_eq!(
        refused("window = 1\nk = \"2\""),
        ("window".into(), "must be at least 2, got 1".into())
    );
    assert_eq!(
        refused("window = 10001\nk = \"2\""),
        ("window".into(), "must be at most 10000, got 10001".into())
    );
    assert_eq!(refused("window = 20\nk = \"0\""), ("k".into(), "must be positive, got 0".into()));
    assert_eq!(refused("window = 20\nk = \"-1\""), ("k".into(), "must be positive, got -1".into()));
    assert_eq!(refused("window = 20").0, "");
    assert_eq!(refused("window = 20\nk = \"2\"\nperiod = 3").0, "period");
}

#[test]
fn a_scenario_naming_bad_parameters_is_refused_with_the_key_in_the_file() {
    let text = horizon_example_bollinger::SCENARIO_TOML.replace("window = 20", "window = 1");
    let err = horizon_example_bollinger::scenario_from(&text, "mine.toml")
        .unwrap_err()
        .to_string();
    assert_eq!(err, "mine.toml: `signals.strategy[0].params.window`: must be at least 2, got 1");
}

#[test]
fn a_strategy_restored_from_its_state_goes_on_as_the_original() {
    let closes: Vec<String> = (0..60).map(|i| format!("{}", 100 + (i * 37 % 23) - (i / 20) * 15)).collect();
    let mut directions = std::collections::BTreeSet::new();
    for cut in [0, 1, 5, 20, 41] {
        // Given a strategy that has seen `cut` bars and a fresh one given its state,
        let mut original = bollinger("window = 5\nk = \"1.5\"");
        for (i, c) in closes[..cut].iter().enumerate() {
            directions.insert(format!("{:?}", original.on_bar(&bar(i as u64, c)).direction));
        }
        let mut restored = bollinger("window = 5\nk = \"1.5\"");
        restored.decode_state(&original.encode_state()).unwrap();
        // when both see the rest,
        for (i, c) in closes.iter().enumerate().skip(cut) {
            let b = bar(i as u64, c);
            // then they agree bar for bar, and end in the same state.
            assert_eq!(restored.on_bar(&b), original.on_bar(&b), "after {cut}");
        }
        assert_eq!(restored.encode_state(), original.encode_state());
    }
    assert_eq!(directions.len(), 3, "every direction taken: {directions:?}");
    assert!(bollinger("window = 5\nk = \"1\"").decode_state(b"not a state").is_err());
}
